"""The machinery every piece of configuration is read with: YAML with line numbers
(yamldoc), generic checkers that report `file:line: target: field: message` (checks),
bounded reading of files (files), and backend entries (backends). The config's sections
(syncd.config) and each source type's own section (syncd.sources) are built from these."""
