"""skeleton: unsafe worker behaviour as anomalies in OpenPose pose sequences (LSTM-VAE vs frame AE / VAE)."""
