"""champion: train image classifiers, and ship only the ones that beat the champion.

The pipeline, one module per stage: ingest → train → gate → export → validate → card.
"""

__version__ = "0.1.0"
