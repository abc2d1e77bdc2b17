"""Dynamic Gaussian Anchoring (paper section 3.2): anchor selection and feature alignment.

``hddc.py`` holds the batched EM (HDDC and full covariance), ``clusters.py`` the clusters
and their densities (eq. 5), ``anchors.py`` the anchor selection of Algorithm 2,
``modes.py`` the test of whether two Gaussians are one attribute (paper mode's trials of
random splits and its merging), ``align.py`` the feature alignment of eq. (6) /
Algorithm 3, and ``estimator.py`` the ``DyGA`` estimator that ties them together.
``streams.py`` gives each unit its own random stream and ``parallel.py`` fits groups of
units on CPU threads.
"""

from dydis.dyga.estimator import DyGA, DyGAInputError, DyGAParameterError

__all__ = ["DyGA", "DyGAInputError", "DyGAParameterError"]
