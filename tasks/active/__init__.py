"""Active learning: which units to label next, from a prediction's class probabilities (plain functions).

`uncertainty` scores each pixel from the stored percent probabilities; `units` groups pixels into
labelling units (square blocks, or SLIC superpixels); `picks` scores the units, stratifies them by
their predicted class and thins them in space. `lcms label-next` (lcms/active_cli.py) runs them on a
year of the prediction store and queues the picks in `lcms serve`'s database.
"""
