//! The operator's side of RabbitMQ is the shared client in `aios-bus`.

pub use aios_bus::{Bus, BusError, DELIVERY_LIMIT};
