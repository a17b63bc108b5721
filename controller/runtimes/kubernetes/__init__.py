"""The Kubernetes runtime: the only package that imports the official ``kubernetes`` client
(in :mod:`.client`); rendering (:mod:`.render`) and names (:mod:`.names`) are pure."""
