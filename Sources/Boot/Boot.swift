// Boot: Linux boot protocol, PVH, e820, MP and ACPI tables.
