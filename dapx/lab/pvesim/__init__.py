"""Simulators of the Proxmox VE and Proxmox Backup Server APIs and PVE's CLI tools, for the lab.

State lives in files (as on PVE): /etc/pve for configs, /var/log/pve/tasks for tasks, the
datastore directory for PBS. Every path is prefixed by env DAPX_SIM_ROOT (see paths.py).
Differences from real Proxmox are listed in README.md next to this file.
"""
