"""Inference on a trained tagger: batched prediction, int8 quantisation, the ONNX Runtime path and uncertainty.

This layer sits above :mod:`refineg.modules` (the models) and below the stages: ``refineg.modules`` never imports
it. ``TaggerPredictor`` (:mod:`.predictor`) tags posts; :mod:`.quantize` and :mod:`.onnx_runtime` are its CPU
speed-ups; :mod:`.uncertainty` scores each predicted entity for the refinement stage.
"""
