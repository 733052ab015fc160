"""The network: trunks, FPN decoders, feature sharing, patches, GLNet and its forward passes."""
