pub mod eval;
pub mod generate;
pub mod info;
pub mod pack;
pub mod quantize;
