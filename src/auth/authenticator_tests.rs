//! Tests of the authenticator.
