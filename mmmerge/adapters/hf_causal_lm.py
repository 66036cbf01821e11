"""placeholder"""
FORMAT = "hf_causal_lm"
DESCRIPTION = "hf_causal_lm (not yet implemented)"


def detect(path):
    return False
