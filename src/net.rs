//! The two networks of the GAN by name (`Net`), and one value for each (`PerNet`): the
//! vocabulary of the trainer, the configuration, the scalar log, the metrics and the
//! checkpoints. A leaf: it depends on nothing in the crate.

use serde::{Deserialize, Serialize};

/// One of the two networks of the GAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Net {
    Critic,
    Generator,
}

impl Net {
    /// In update order within an iteration.
    pub const ALL: [Net; 2] = [Net::Critic, Net::Generator];

    /// "critic" or "generator": metric labels, checkpoint tensor names, messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Net::Critic => "critic",
            Net::Generator => "generator",
        }
    }

    /// "d" or "g": the prefix of the network's keys in the scalar log.
    pub fn prefix(self) -> &'static str {
        match self {
            Net::Critic => "d",
            Net::Generator => "g",
        }
    }
}

/// One value for each network, indexed by `Net`; serialised as {"critic": .., "generator": ..}.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerNet<T> {
    pub critic: T,
    pub generator: T,
}

impl<T> PerNet<T> {
    /// Builds each network's value.
    pub fn from_fn(mut f: impl FnMut(Net) -> T) -> Self {
        PerNet { critic: f(Net::Critic), generator: f(Net::Generator) }
    }

    pub fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> PerNet<U> {
        PerNet { critic: f(&self.critic), generator: f(&self.generator) }
    }
}

impl<T> std::ops::Index<Net> for PerNet<T> {
    type Output = T;
    fn index(&self, net: Net) -> &T {
        match net {
            Net::Critic => &self.critic,
            Net::Generator => &self.generator,
        }
    }
}

impl<T> std::ops::IndexMut<Net> for PerNet<T> {
    fn index_mut(&mut self, net: Net) -> &mut T {
        match net {
            Net::Critic => &mut self.critic,
            Net::Generator => &mut self.generator,
        }
    }
}
