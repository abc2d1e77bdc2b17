"""What the latent units mean, as the paper's figures (DESIGN section 1 (d)).

``sampler.py`` holds what every generated figure shares (a trained model, its VQ decoder and a
DDIM setting); ``interchange.py`` (Figs. 3, 8), ``attention.py`` (Figs. 4, 9, 10),
``interpolate.py`` (Fig. 6), ``units.py`` (Figs. 1, 11) and ``curves.py`` (Fig. 7) compute
the figures' contents, and ``figures.py`` alone draws them with matplotlib.
"""
