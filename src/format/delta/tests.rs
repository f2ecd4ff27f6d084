//! Tests of the native delta format.
