"""Video sessions: track objects through a clip on the same model seam as images."""
