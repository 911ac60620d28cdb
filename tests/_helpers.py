"""Small test doubles shared by several test files."""


class CharTok:
    """bytes as tokens; id 0 = EOS."""
    eos_id = 0
    vocab_size = 256

    def encode(self, s):
        return list(s.encode())

    def decode(self, ids):
        return bytes(i for i in ids if i).decode("utf-8", "replace")
