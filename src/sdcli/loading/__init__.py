"""Loading: model references, single original-layout files, devices, and the components on a device."""
