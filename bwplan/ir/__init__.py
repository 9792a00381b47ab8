"""The graph IR: typed tensors, layers, edges and parameter uses, frozen once built."""
