"""The config options the simulator accepts per guest kind (a subset of PVE's schema; unknown
keys get PVE's 'property is not defined in schema' 400)."""

from __future__ import annotations

import re

_QEMU = (r"name|memory|cores|sockets|cpu|numa|ostype|boot|bootdisk|scsihw|agent|onboot|description|tags|"
         r"protection|bios|machine|vga|smbios1|vmgenid|balloon|args|hotplug|kvm|acpi|startup|template|cicustom|"
         r"ciuser|cipassword|nameserver|searchdomain|sshkeys|citype|ciupgrade|vcpus|cpulimit|cpuunits|affinity|"
         r"shares|localtime|tablet|keyboard|autostart|hookscript|meta|watchdog|rng0|audio0|startdate|freeze|"
         r"spice_enhancements|vmstatestorage|migrate_downtime|migrate_speed|hugepages|keephugepages|arch|"
         r"(net|scsi|sata|ide|virtio|unused|hostpci|usb|ipconfig|numa|serial|parallel|virtiofs)\d+|efidisk0|tpmstate0|"
         r"amd-sev|intel-tdx|import-working-storage|allow-ksm")
_LXC = (r"hostname|memory|swap|cores|cpulimit|cpuunits|arch|ostype|rootfs|onboot|description|tags|protection|"
        r"unprivileged|features|nameserver|searchdomain|startup|template|console|tty|cmode|hookscript|timezone|"
        r"entrypoint|env|debug|(mp|net|unused|dev)\d+")

CONFIG_KEYS = {"qemu": re.compile(_QEMU), "lxc": re.compile(_LXC)}
