"""The Predictor behind Ray: `serve` (Ray Serve, HTTP with request batching) and `label` (Ray Data, batch
inference over files). Ray is an extra (`pip install 'crisis-tool[serve]'`); nothing here imports torch, the
toolkit or the exporter, and `options` and `predict_request` import no Ray, so the CLI can read defaults and
validate arguments without it.
"""
