"""Training loops (one on cached features, one on images), learning-rate schedules, epoch selection and calibration."""
