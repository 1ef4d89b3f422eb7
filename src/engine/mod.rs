pub mod detokenizer;
pub mod sampler;
pub mod stop;
