"""How DAPX talks to nodes: SSH sessions and the PVE/PBS API clients.

Plain classes with no Prefect in them; the node block hands them out
(``ProxmoxNode.ssh()``, ``ProxmoxNode.api()``) and the tasks use them.
Layers, one way: flows -> tasks -> blocks -> transports -> core.
"""
