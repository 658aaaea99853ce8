//! The simulator (see sim/README in the module docs below).
