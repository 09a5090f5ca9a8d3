# diffcode: filled in by issue #8.

DIFFCODE_OUTPUTS = []
