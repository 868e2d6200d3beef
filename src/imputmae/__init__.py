"""imputmae: the impuTMAE pipeline, from the GDC to survival tables.

Stages are modules (``config``, ``demo``, ``gdc``, ``wsi``, ``omics``, ``model``, ``engine``, ``survival``,
``tables``); each exposes small typed functions that return values. The ``imputmae`` command line
(:mod:`imputmae.cli`) parses arguments, makes one library call, and does the I/O.
"""

__version__ = "0.1.0"
