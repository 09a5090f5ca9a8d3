"""Report: reads metrics and reconstructions from results/, renders tables and figures.

Never reruns a model.
"""
