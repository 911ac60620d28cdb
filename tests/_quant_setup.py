"""Shared set-up of the quantized-layer tests: a tiny Decoder, a batch of ids and its float logits."""
import torch

from lmlab.config import ModelConfig
from lmlab.models.decoder import Decoder

CFG = ModelConfig(vocab_size=128, d_model=64, n_layer=2, n_head=4, n_kv_head=2, max_seq_len=64, d_ff=128)


def tiny_decoder():
    """(model in eval mode, ids (2, 12), its float logits), seeded."""
    torch.manual_seed(0)
    model = Decoder(CFG).eval()
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        ref = model(ids).logits
    return model, ids, ref
