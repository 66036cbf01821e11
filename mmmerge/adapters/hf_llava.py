"""placeholder"""
FORMAT = "hf_llava"
DESCRIPTION = "hf_llava (not yet implemented)"


def detect(path):
    return False
