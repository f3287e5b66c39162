"""Custom Lava processes of this library. Lava's compiler executes every module in the folder that
defines a process, once per process instance, so this folder holds process definitions only."""
