"""Tests of client/: the client library, aegen-sample, aegen-loadtest and the commands the README prints."""
