"""Recurrent token mixers: HGRN2 (gated linear RNN with state expansion) and Griffin's RG-LRU block."""
