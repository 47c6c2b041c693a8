CREATE DATABASE mlflow OWNER vlmpipe;
