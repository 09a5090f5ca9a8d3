# lora: filled in by issue #9.

LORA_OUTPUTS = []
