pub mod coders;
