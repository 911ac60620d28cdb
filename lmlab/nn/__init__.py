"""Pure modules: token mixers, channel mixers, residual policies. No training logic lives here.

Rule: nothing in `lmlab.nn` imports from train/, align/, infer/, eval/ or experiments/.
"""
