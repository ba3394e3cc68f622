//! Every Redis key name and Lua script used by celeriac, each with its contract.
