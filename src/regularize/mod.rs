//! Regularisers added to the critic or generator loss, one file each.

pub mod gradient_penalty;
