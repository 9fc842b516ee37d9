"""``python -m keras_cnn`` = ``kcnn``."""

from keras_cnn.cli import main

main()
