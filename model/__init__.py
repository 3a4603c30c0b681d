"""The generator: mel front end, Music DCAE, Linear DiT, condition encoders, flow matching."""
