"""Training: fitting, the two-stage routine, callbacks, devices and distribution."""
