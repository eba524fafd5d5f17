"""Test, demo and benchmark tooling for fusesnap (not part of the installed package).

The real parts the tests run against, each usable alone:

- `tools.registry`     a CNCF Distribution registry (``docker-registry``) on a loopback port
- `tools.tokenserver`  a token server for the registry's ``auth: token`` mode
- `tools.faultproxy`   an HTTP reverse proxy that counts traffic and injects faults
- `tools.images`       OCI image builders (busybox, Debian, crafted edge cases),
                       ``skopeo`` pushes and ``umoci`` ground truth
- `tools.testenv`      which of the system tools the tests need are present
"""
