"""``kcnn doctor``: check labelled images before training.

The flow (:func:`keras_cnn.doctor.run.run_doctor`)::

    source ─▶ table (objectId, value, type, sha1; duplicates kept)        source.py
          ─▶ unreadable files, 32x32 thumbnails, sizes ─▶ picture checks  pictures.py, thumbnails.py
          ─▶ features (a frozen base, or a run's penultimate layer)       features.py
          ─▶ nearest neighbours (exact, in blocks: no n x n matrix)      neighbours.py
          ─▶ k-fold head ─▶ out-of-sample probabilities ─▶ cleanlab       labels.py
          ─▶ outliers (far from their nearest neighbours)                outliers.py
          ─▶ exact and near-duplicates, leakage across parts             duplicates.py
          ─▶ balance, issues.csv, exclude.txt, doctor.html               balance.py, findings.py, report.py

The optional libraries (cleanlab, scikit-learn, cleanvision) come with ``pip install
'kcnn[doctor]'``; :mod:`keras_cnn.doctor.libraries` checks for them without importing
them, so this package's ``__init__`` imports nothing.  Doctor only reads images: it never
modifies, moves or deletes one.
"""
