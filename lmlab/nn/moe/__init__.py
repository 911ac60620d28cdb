"""Mixture-of-experts: routers (routers.py), expert dispatch (experts.py), the `moe` channel mixer
(layer.py), JetMoE mixture of attention heads (moa.py), sparse upcycling and BTX merging (upcycle.py)."""
