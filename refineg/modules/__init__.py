"""Neural network building blocks (CRF, encoders, heads)."""
