"""placeholder"""
FORMAT = "hf_vision"
DESCRIPTION = "hf_vision (not yet implemented)"


def detect(path):
    return False
