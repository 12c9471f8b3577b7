//! Support code for raftkv's end-to-end tests: starting, stopping and
//! talking to real `raftkv` processes on loopback.
