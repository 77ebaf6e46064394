//! Validated proxy configuration shared by the compiler and the commands.
