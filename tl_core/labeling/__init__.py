"""From unlabelled pictures to a labelled set: a classifier on frozen features that suggests
labels and picks what to label next (:mod:`assist`), likely wrong labels (:mod:`issues`), the
2D map of the pictures (:mod:`projection`), and the job that computes them once per data
version and model (:mod:`survey`). Torch-free except :mod:`survey`."""
