"""Pure modules: token mixers, channel mixers, residual policies. No training logic lives here.

Rule: nothing in `lmlab.nn` imports from train/, align/, infer/, eval/ or experiments/.
Registered components follow the constructor contract in `lmlab.nn.block`: a nested typed `Args`, built as
`cls(dims, args)`; the decoder owns initialisation.
"""
