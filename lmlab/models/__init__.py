from lmlab.models.decoder import Decoder, DecoderOutput, build_model, count_params, flops_per_token

__all__ = ["Decoder", "DecoderOutput", "build_model", "count_params", "flops_per_token"]
