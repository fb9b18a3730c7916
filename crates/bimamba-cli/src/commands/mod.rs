pub mod bench;
pub mod eval;
pub mod external;
pub mod generate;
pub mod info;
pub mod pack;
pub mod quantize;
pub mod serve;
