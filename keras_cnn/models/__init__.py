"""Model builders: the from-scratch zoo, transfer bases (keras.applications, TF Hub, keras-hub) and heads.

``create_model`` (:mod:`keras_cnn.models.factory`) builds any of them; ``load_model``
reloads a saved run's model.
"""
